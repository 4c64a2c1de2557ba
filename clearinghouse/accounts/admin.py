from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from .models import APIToken, User


@admin.register(User)
class ClearinghouseUserAdmin(UserAdmin):
    fieldsets = (*(UserAdmin.fieldsets or ()), ("Consortium", {"fields": ("is_operator",)}))
    list_display = ("username", "email", "is_operator", "is_active", "date_joined")


@admin.register(APIToken)
class APITokenAdmin(admin.ModelAdmin):
    list_display = ("name", "user", "prefix", "created_at", "expires_at", "revoked_at")
    readonly_fields = ("prefix", "secret_hash", "created_at", "last_used_at")
