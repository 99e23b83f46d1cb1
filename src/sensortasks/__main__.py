from sensortasks.cli import main

main()
