"""The real serving stack, and nothing else (see ARCHITECTURE.md): processes (:mod:`.procs`), the stack's
errors (:mod:`.errors`), the load balancer (:mod:`.lb`), Triton and its model repository (:mod:`.triton`,
:mod:`.triton_model`), the backend interface (:mod:`.backends`) with its local and Kubernetes
implementations (:mod:`.local`, :mod:`.kubernetes`) and the choice between them (:mod:`.deploy`), a
pipeline's stages deployed one backend each and chained by the client (:mod:`.chain`), load
generation (:mod:`.loadgen`, :mod:`.locustfile`, :mod:`.arrivals`), scraping (:mod:`.scrape`), the model
(:mod:`.model`) and the ``stack:`` settings (:mod:`.config`). It imports nothing from the experiments in
``cluster/`` (measure, controller, validate, pipeline, setup), from ``rl`` or from ``calibration``."""
