"""SIGMA monitor client: stream embeddings of each model generation to sigmad.

    mon = sigma_client.Monitor("127.0.0.1:50051", job="opt125m-s2", tap="last_hidden")
    with mon.generation(k, corpus_size=None) as gen:
        gen.send(embeddings)              # [rows, m] torch tensor or numpy array
    report = gen.wait(60)                 # GenerationReport once every rank finished
"""
from .errors import SigmaError
from .generation import NotSealedError
from .monitor import Generation, Monitor, WorldSizeWarning, detect_rank
from .report import (Alert, GenerationReport, JobConfig, JobInfo, PerDimension, ReportFlags,
                     TapInfo, Thresholds)
from .sketch import bottom_k, pick_target, priorities, rendezvous_score, splitmix64

__version__ = "0.1.0"

__all__ = [
    "Monitor", "Generation", "SigmaError", "NotSealedError", "GenerationReport", "ReportFlags", "PerDimension",
    "Alert", "JobInfo", "TapInfo", "JobConfig", "Thresholds", "detect_rank", "WorldSizeWarning", "bottom_k",
    "priorities", "splitmix64", "pick_target", "rendezvous_score", "__version__",
]
