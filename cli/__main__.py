from pyjob.cli.main import main

main()
