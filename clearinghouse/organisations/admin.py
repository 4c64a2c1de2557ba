from django.contrib import admin

from .models import Invitation, JoinRequest, Membership, Organisation


@admin.register(Organisation)
class OrganisationAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "country", "status", "created_at")
    list_filter = ("status",)
    # Status moves go through the portal/API services so that they are checked and audited.
    readonly_fields = ("status", "status_reason", "decided_by", "decided_at")


admin.site.register(Membership)
admin.site.register(JoinRequest)
admin.site.register(Invitation)
