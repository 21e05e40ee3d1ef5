"""Pure metric kernels: the FMR protocol's (:mod:`.fmr`) and the static evaluators' (:mod:`.static`)."""
