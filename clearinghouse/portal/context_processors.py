from clearinghouse.organisations.selectors import membership_of, user_capabilities


def membership(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {"my_membership": membership_of(user=user), "my_capabilities": user_capabilities(user=user)}
