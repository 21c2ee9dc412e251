"""One module per command: parse arguments, call the library, render. No tensor math here."""
