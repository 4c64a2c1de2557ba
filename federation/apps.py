from django.apps import AppConfig


class FederationConfig(AppConfig):
    """Federated fine-tuning jobs (Flower). Filled by the federated fine-tuning work."""

    name = "federation"
    label = "federation"
