"""`python -m services.scheduler`: start the scheduler with settings from the environment."""

from services.scheduler.server import main

main()
