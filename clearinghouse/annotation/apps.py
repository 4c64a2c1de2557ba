from django.apps import AppConfig


class AnnotationConfig(AppConfig):
    name = "clearinghouse.annotation"
    label = "annotation"
