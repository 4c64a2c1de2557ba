from clearinghouse.core.tasks import ping_task


def test_a_real_worker_consumes_a_real_message(celery_worker_process):
    result = ping_task.delay()
    assert result.get(timeout=30) == "pong"
    assert celery_worker_process.poll() is None
