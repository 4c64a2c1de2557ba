"""The audit log becomes one chain per stream (an organisation's, the consortium's): see
clearinghouse/audit/models.py. The events written so far stay as they were hashed, as the legacy
stream -1 in their `seq` order, and its head is the one head row there was; `seq` numbers the events
of every stream from a sequence from now on (PostgreSQL; SQLite, for development, counts)."""

from django.db import migrations, models

LEGACY_STREAM = -1


def create_sequence(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("CREATE SEQUENCE IF NOT EXISTS audit_event_seq")
        cursor.execute(
            "SELECT setval('audit_event_seq', COALESCE((SELECT MAX(seq) FROM audit_auditevent), 0) + 1, false)"
        )
        # The one head row so far was made with an explicit id (0002): new heads take ids after it.
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence('audit_auditchainhead', 'id'), "
            "COALESCE((SELECT MAX(id) FROM audit_auditchainhead), 0) + 1, false)"
        )


def drop_sequence(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            cursor.execute("DROP SEQUENCE IF EXISTS audit_event_seq")


def number_legacy_events(apps, schema_editor):
    apps.get_model("audit", "AuditEvent").objects.update(stream_seq=models.F("seq"))


def refuse_to_drop_streams(apps, schema_editor):
    if apps.get_model("audit", "AuditEvent").objects.exclude(stream=LEGACY_STREAM).exists():
        raise migrations.exceptions.IrreversibleError(
            "Audit events in streams exist; reversing would break the audit chain."
        )


class Migration(migrations.Migration):
    dependencies = [("audit", "0003_event_hash_version")]

    operations = [
        migrations.AddField(
            model_name="auditevent",
            name="stream",
            field=models.BigIntegerField(default=LEGACY_STREAM, editable=False),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="auditevent",
            name="stream_seq",
            field=models.BigIntegerField(default=0, editable=False),
            preserve_default=False,
        ),
        migrations.RunPython(number_legacy_events, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="auditevent",
            constraint=models.UniqueConstraint(
                fields=("stream", "stream_seq"), name="audit_event_stream_position"
            ),
        ),
        migrations.RemoveConstraint(model_name="auditchainhead", name="audit_head_singleton"),
        migrations.AddField(
            model_name="auditchainhead",
            name="stream",
            field=models.BigIntegerField(default=LEGACY_STREAM, unique=True),
            preserve_default=False,
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="hash_version",
            field=models.PositiveSmallIntegerField(db_default=1, default=3, editable=False),
        ),
        migrations.RunPython(create_sequence, drop_sequence),
        # Last, so that it is the first step of a reversal (while the columns still exist).
        migrations.RunPython(migrations.RunPython.noop, refuse_to_drop_streams),
    ]
