from gatepost.cli import main

main()
