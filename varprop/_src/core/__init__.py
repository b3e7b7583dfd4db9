"""The pure-JAX core: the MLP (:mod:`.network`) and the normalization functions
(:mod:`.normalizers`, options checked in :mod:`.norm_checks`). No Flax here: the probe and
the Flax modules are built on top of it."""
