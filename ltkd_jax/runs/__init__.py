"""Run directories: ownership and bookkeeping of a workdir (`rundir`: lock, resume check,
invocations, preemption, run.log, summary.json), finished runs read back as teachers or as
models to deploy (`finished`), and the command-line job that ties the stages together
(`job`)."""
