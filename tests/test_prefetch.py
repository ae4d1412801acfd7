"""`background`: items in order, the producer's error raised in the consumer, and a consumer that leaves
early (an error of its own, a break) never waits for a producer that is waiting for room."""

import threading

import pytest

from adpa.artifacts.prefetch import background


def test_items_arrive_in_order_and_a_producer_error_reaches_the_consumer():
    assert list(background(range(100), depth=3)) == list(range(100))

    def failing():
        yield 1
        raise KeyError("bad row")

    with pytest.raises(KeyError, match="bad row"):
        list(background(failing()))


@pytest.mark.parametrize("leave_at", [0, 2])
def test_a_consumer_that_fails_while_the_queue_is_full_is_not_held(leave_at):
    """The producer has put all it had and waits for room for its end marker when the consumer fails: the
    consumer's error must come out (a run that diverged at its last steps once hung here)."""
    seen = {}

    def consume():
        try:
            for i, _ in enumerate(background(range(leave_at + 3), depth=2)):  # 2 left: the queue full
                if i == leave_at:
                    threading.Event().wait(0.5)  # the producer fills the queue meanwhile
                    raise ValueError("diverged")
        except ValueError as e:
            seen["error"] = e

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    t.join(120)  # a deadlock, not a speed limit: a correct run ends within a second
    assert not t.is_alive() and "diverged" in str(seen["error"])
