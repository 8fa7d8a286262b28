"""``flywheel cycle`` in the terminal: each task's end and, while a task runs, its progress bars
(as ``airflow dags test`` passes them through), a few seconds apart; nothing else of Airflow's."""

from __future__ import annotations

import re

from tasks.stack.cycle import LiveEcho


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def unstamped(lines: list[str]) -> list[str]:
    return [re.sub(r"^  \d\d:\d\d:\d\d ", "", line) for line in lines]


def shown(echo: LiveEcho, clock: Clock, at: float, line: str) -> list[str]:
    """What the terminal gets for ``line`` at second ``at``, without the wall-clock stamp."""
    clock.now = at
    return unstamped(echo(line))


def bar(n: int, total: int = 800, eta: str = "03:10", loss: str = "0.412") -> str:
    """A refresh of the fine-tune worker's bar, as its task log (and dags test) prints it."""
    return (f"train minilm-router-lora:  {100 * n // total}%|#5        | {n}/{total} "
            f"[00:30<{eta},  4.00it/s, loss={loss}, lr=1.0e-04]\n")


def test_a_running_tasks_progress_is_shown_throttled_and_airflows_own_lines_are_not():
    clock = Clock()
    echo = LiveEcho(every=5.0, clock=clock)
    quiet = [
        "2026-12-07T21:27:34.121422Z [info     ] Task started                   "
        "[airflow.api_fastapi.execution_api.routes.task_instances] loc=task_instances.py:226\n",
        "2026-12-07T21:27:28.181321Z [info     ] [DAG TEST] starting task_id=finetune "
        "map_index=0 [airflow.sdk.definitions.dag] loc=dag.py:1501\n",
        "minilm-router-lora: training from the start\n",
        "Loading weights:   0%|          | 0/11 [00:00<?, ?it/s]\n",  # a bar just opened
        bar(0, eta="?"),
        "  warnings.warn(msg)\n",
    ]
    assert [shown(echo, clock, 0.0, line) for line in quiet] == [[]] * len(quiet)

    assert shown(echo, clock, 10.0, bar(120)) == [
        "finetune[0] train minilm-router-lora 120/800 loss 0.412 eta 3m10s"]
    assert shown(echo, clock, 12.0, bar(130)) == []  # under 5 s since the last one
    assert shown(echo, clock, 16.0, bar(150, eta="1:02:03")) == [
        "finetune[0] train minilm-router-lora 150/800 loss 0.412 eta 1h02m"]
    assert shown(echo, clock, 17.0, bar(160)) == []
    assert shown(echo, clock, 18.0, bar(800, eta="00:00", loss="0.101")) == []
    # the task ends: the last state held back comes first, without an eta at 800/800
    done = shown(echo, clock, 18.5, "2026-12-07T21:30:00.248718Z [info     ] [DAG TEST] end "
                                    "task task_id=finetune map_index=0 [airflow.sdk] loc=x\n")
    assert done == ["finetune[0] train minilm-router-lora 800/800 loss 0.101",
                    "done: finetune[0]"]

    # the next task is throttled on its own; lm-eval's bars (carriage returns read as line
    # ends) flood in, a few lines come out
    assert shown(echo, clock, 19.0, "[DAG TEST] starting task_id=evaluate map_index=0\n") == []
    refreshes = [f"Running generate_until requests:  {i // 10}%|####      | {i}/1000 "
                 f"[00:{i // 50:02d}<00:20, 50.0it/s]\n" for i in range(1, 1001)]
    out = [text for i, line in enumerate(refreshes, 1)
           for text in shown(echo, clock, 19.0 + i * 0.02, line)]
    assert out[0] == "evaluate[0] Running generate_until requests 1/1000 eta 20s"
    assert len(out) == 4  # 20 s of refreshes, one line every 5 s
    # the run stops without the task's end line: the last state held back is not lost
    assert unstamped(echo.flush()) == ["evaluate[0] Running generate_until requests 1000/1000"]
    assert echo.flush() == []

    # failures are shown as they are
    failed = "2026-12-07T21:31:00Z [info ] Task instance state updated new_state=failed\n"
    assert shown(echo, clock, 41.0, failed) == ["  " + failed.rstrip()]
