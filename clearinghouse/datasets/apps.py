from django.apps import AppConfig


class DatasetsConfig(AppConfig):
    name = "clearinghouse.datasets"
    label = "datasets"
