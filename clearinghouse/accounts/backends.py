from django.contrib.auth.backends import ModelBackend

from clearinghouse.organisations.selectors import user_is_suspended


class MemberAwareBackend(ModelBackend):
    """Password login, refused for members of a suspended organisation."""

    def user_can_authenticate(self, user) -> bool:
        return super().user_can_authenticate(user) and not user_is_suspended(user=user)
