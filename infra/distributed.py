"""Low-level Ray runtime helper shared by every stage: one way to start or join Ray.

Embedded default: a local Ray with the dashboard off (or bound to 127.0.0.1). `ray.address=auto`
or an explicit address (or $RAY_ADDRESS) joins a running cluster instead.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from dataclasses import dataclass

from pipeline.config import ConfigError

from .logs import ray_log_dir, reapply


@dataclass
class RayConfig:
    address: str | None = None  # None: start a local Ray; "auto" or host:port joins a cluster
    num_cpus: int | None = None  # local Ray only; None = all cores
    dashboard: bool = False  # local Ray only; bound to 127.0.0.1 when on
    object_store_mb: int = 512  # local Ray only: keeps a laptop run small
    max_failures: int = 2  # Ray Train: worker-group restarts from the latest checkpoint before giving up
    # torch threads per Ray Train learner; 0 = Ray's default, one per reserved CPU (1). A lone learner on
    # a laptop may take every core (e.g. 2 on 2 cores: 1.6x faster teacher steps); cores are shared, not reserved.
    learner_threads: int = 0
    # Ray workers' stdout/stderr on this console. Off: they stay in Ray's session logs (printed path),
    # and the console keeps the stage lines; results and errors still come back to the driver.
    log_to_driver: bool = False

    def validate(self, prefix: str = "ray") -> None:
        if self.num_cpus is not None and self.num_cpus <= 0:
            raise ConfigError(f"{prefix}.num_cpus: must be positive (or null for all cores)")
        if self.max_failures < -1:
            raise ConfigError(f"{prefix}.max_failures: must be >= 0 (or -1 for unlimited)")
        if self.learner_threads < 0:
            raise ConfigError(f"{prefix}.learner_threads: must be >= 0 (0 = one per reserved CPU)")
        if self.object_store_mb < 64:
            raise ConfigError(f"{prefix}.object_store_mb: must be at least 64")


def init_ray(cfg: RayConfig | None = None):
    """Start (or join) Ray once per process; returns the ray module. Idempotent."""
    import ray

    if ray.is_initialized():
        return ray
    reapply()  # Ray attaches its console handler on import
    cfg = cfg or RayConfig()
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=cfg.log_to_driver)
    else:
        from .ray_reaper import forget_local_ray, reap_orphans, record_local_ray

        reap_orphans()
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=cfg.dashboard, dashboard_host="127.0.0.1",
                 object_store_memory=cfg.object_store_mb * 1024 * 1024, logging_level=logging.WARNING,
                 configure_logging=True, log_to_driver=cfg.log_to_driver)
        record_local_ray()
        atexit.register(forget_local_ray)  # LIFO: runs before Ray's own exit hook stops its processes
    reapply()  # ray.init attached its console handlers
    logs = None if cfg.log_to_driver else ray_log_dir()
    if logs:
        print(f"rollforge: Ray worker logs: {logs}", file=sys.stderr)
    return ray
