from gym_server.cli import main

main()
