"""`python -m services.scheduler`: start the scheduler with settings from the environment;
`python -m services.scheduler admin ...`: manage users and tokens (services/scheduler/admin.py)."""

import sys

if sys.argv[1:2] == ["admin"]:
    from services.scheduler.admin import main as admin_main

    sys.exit(admin_main(sys.argv[2:]))
else:
    from services.scheduler.server import main

    main()
