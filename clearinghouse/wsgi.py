import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clearinghouse.settings.production")
application = get_wsgi_application()

# Register the tasks now, not on the first requests that send one (importing them takes seconds).
from clearinghouse.core.enqueue import discover_tasks  # noqa: E402

discover_tasks()

# Previews are priced here (data-independent): pay OpenDP's first-measurement cost at start.
from clearinghouse.dp import warm_up  # noqa: E402

warm_up()
