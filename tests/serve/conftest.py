from tests.infer.conftest import one_torch_thread  # noqa: F401  (autouse: one torch thread here too)
