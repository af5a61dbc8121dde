"""The job lifecycle: submit, queue, claim, heartbeat, cancel, lost workers; what a job function gets (`Run`) and what a job makes (outputs)."""
