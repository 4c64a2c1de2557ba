from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

from clearinghouse.core.errors import Conflict

from .roles import Role


class OrganisationStatus(models.TextChoices):
    PENDING = "pending", "Pending approval"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    SUSPENDED = "suspended", "Suspended"


# The only moves an organisation's status may make; the model refuses any other.
ORGANISATION_TRANSITIONS: dict[str, frozenset[str]] = {
    OrganisationStatus.PENDING: frozenset({OrganisationStatus.APPROVED, OrganisationStatus.REJECTED}),
    OrganisationStatus.APPROVED: frozenset({OrganisationStatus.SUSPENDED}),
    OrganisationStatus.SUSPENDED: frozenset({OrganisationStatus.APPROVED}),
    OrganisationStatus.REJECTED: frozenset(),
}


class Organisation(models.Model):
    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=50, unique=True)
    country = models.CharField(max_length=2, help_text="ISO 3166-1 alpha-2 code")
    contact_email = models.EmailField()
    status = models.CharField(
        max_length=16, choices=OrganisationStatus.choices, default=OrganisationStatus.PENDING
    )
    status_reason = models.TextField(blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(Lower("name"), name="organisation_name_unique_ci"),
            models.CheckConstraint(
                condition=models.Q(status__in=OrganisationStatus.values), name="organisation_status_valid"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def transition_to(self, status: str, *, by, reason: str) -> str:
        """Moves to `status` if that move is allowed; returns the previous status."""
        if status not in ORGANISATION_TRANSITIONS[self.status]:
            raise Conflict(
                f"An organisation that is {self.status} cannot become {status}.",
                code="invalid_status_transition",
            )
        previous = self.status
        self.status = status
        self.status_reason = reason
        self.decided_by = by
        self.decided_at = timezone.now()
        return previous

    @property
    def is_approved(self) -> bool:
        return self.status == OrganisationStatus.APPROVED


class Membership(models.Model):
    """A user's place in one organisation. A user belongs to at most one organisation: a person
    who works for two members holds two accounts, which keeps every action attributable to one."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="membership")
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["organisation", "user__username"]
        constraints = [
            models.CheckConstraint(condition=models.Q(role__in=Role.values), name="membership_role_valid")
        ]

    def __str__(self) -> str:
        return f"{self.user} @ {self.organisation} ({self.role})"


class RequestStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    WITHDRAWN = "withdrawn", "Withdrawn"


class JoinRequest(models.Model):
    """A signed-up user asking to join an approved organisation; its admins (or an operator) decide."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="join_requests")
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="join_requests")
    message = models.TextField(blank=True, max_length=1000)
    status = models.CharField(max_length=16, choices=RequestStatus.choices, default=RequestStatus.PENDING)
    role = models.CharField(max_length=16, choices=Role.choices, blank=True)
    reason = models.TextField(blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["user"],
                condition=models.Q(status="pending"),
                name="one_pending_join_request_per_user",
            )
        ]

    def __str__(self) -> str:
        return f"join request of user {self.user_id} to organisation {self.organisation_id} ({self.status})"


class Invitation(models.Model):
    """An org admin's invitation; accepting needs the secret link, whose hash alone is stored."""

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Role.choices)
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"invitation to organisation {self.organisation_id} as {self.role}"

    @property
    def is_open(self) -> bool:
        return self.accepted_at is None and self.revoked_at is None and self.expires_at > timezone.now()
