"""``python -m sensortasks.broker ADMIN_URL INSTANCE PASSWORD``: create or update a dispatcher
instance's broker account (used by ./scripts/run and docker-compose.yml)."""

import sys

from sensortasks.broker.dynsec import main

sys.exit(main())
