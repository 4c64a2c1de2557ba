from typing import ClassVar

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class APITokenScheme(OpenApiAuthenticationExtension):
    target_class = "clearinghouse.accounts.authentication.APITokenAuthentication"
    name = "bearerToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "bearerFormat": "chp_<prefix>_<secret>"}


class SessionVariantScheme(OpenApiAuthenticationExtension):
    """Variants of session authentication (the upload endpoint checks CSRF from the header only) use
    the same `cookieAuth` scheme as DRF's own, which drf-spectacular matches by exact class only and
    which defines the scheme (this one defines none: a second definition of the name would clash)."""

    target_class = "rest_framework.authentication.SessionAuthentication"
    match_subclasses = True
    priority = -2  # drf-spectacular's own describes SessionAuthentication itself
    # drf-spectacular declares `name` an instance attribute; extensions set it on the class.
    name: ClassVar[list[str]] = []  # type: ignore[misc]

    def get_security_requirement(self, auto_schema):
        return {"cookieAuth": []}

    def get_security_definition(self, auto_schema):
        return []
