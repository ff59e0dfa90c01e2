from pairgraph.cli.main import main

main()
