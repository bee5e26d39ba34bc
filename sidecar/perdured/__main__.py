from perdured.cli import main

main()
