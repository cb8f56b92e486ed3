from services.publisher.worker import main

main()
