"""Training pieces shared by every method: the loop config, schedules, the step, contrastive losses."""
