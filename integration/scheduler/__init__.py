"""The one scheduler: every unit of work has its next attempt time and attempt count in Redis.

A unit is an event to process, a dispatch to submit, a dispatch to poll or an outbox to deliver.
A retry, a back-off, a 429 pause and the recovery of a unit whose worker died are all the same
thing here: the unit's next attempt time in `rb:due` (units.py). The engine (runner.py) claims
due units in batches inside RQ jobs; the clock (clock.py) hands expired claims back and wakes
the workers when something timed is due. Nothing here knows what a unit does: the stages
(dispatches/, writeback/) do, and jobs/ joins the two.
"""
