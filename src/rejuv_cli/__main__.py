from rejuv_cli.cli import main

main()
