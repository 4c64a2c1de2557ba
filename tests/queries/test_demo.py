from django.core.management import call_command

from clearinghouse.datasets.models import DatasetVersion
from clearinghouse.queries.models import BudgetAllocation


def test_demo_builds_a_consortium_ready_to_query(db, media_root, capsys):
    call_command("demo")
    out = capsys.readouterr().out
    assert "census-bureau/pums: 1000 rows" in out and "labour-survey/adult: 30162 rows" in out
    assert "Bearer chp_" in out
    assert DatasetVersion.objects.filter(status="ready").count() == 2
    assert BudgetAllocation.objects.filter(organisation__slug="research-lab").count() == 2
