from services.voting.worker import main

main()
