from django.apps import AppConfig


class QueriesConfig(AppConfig):
    """Differentially private queries and the privacy-budget ledger that pays for them."""

    name = "clearinghouse.queries"
    label = "queries"
