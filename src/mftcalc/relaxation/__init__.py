"""Batched structure relaxation: the public ``relax`` (:mod:`mftcalc.relaxation.api`), the in-flight batch engine
(:mod:`mftcalc.relaxation.engine`), its optimiser and cell-filter registries (:mod:`mftcalc.relaxation.optimizers`,
:mod:`mftcalc.relaxation.cell_filters`) and the CPU worker pool (:mod:`mftcalc.relaxation.pool`)."""
