"""`rejuv sweep`: candidates at several α measured in one process, and a recommended α."""
