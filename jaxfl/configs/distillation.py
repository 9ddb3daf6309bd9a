"""The configs of the distillation family: DS-FL, FD, FedDF, FedMD and FCCL, which exchange
predictions on data (soft labels, logits) instead of, or beside, model weights. Each field is a
setting (:func:`jaxfl.configs.fields.setting`): its help and allowed values are the command
line's."""

from __future__ import annotations

import dataclasses

from jaxfl.configs import shared
from jaxfl.configs.fields import setting
from jaxfl.configs.shared import DPFields
from jaxfl.core.names import AGGREGATIONS


@dataclasses.dataclass(frozen=True)
class DSFLConfig(DPFields):
    clients_per_round: int | None = shared.clients_per_round()
    local_epochs: int = shared.local_epochs(5)
    batch_size: int = shared.batch_size()
    lr: float = shared.lr()
    distill_epochs: int = setting(5, "distillation epochs", check=">= 1")
    distill_batch_size: int | None = shared.distill_batch_size()
    distill_lr: float | None = setting(None, "distillation lr", check="> 0", default_help="--lr")
    public_per_round: int = shared.public_per_round(1000)
    temperature: float = setting(0.1, "ERA softmax temperature T", check="> 0")
    aggregation: str = setting(
        "era",
        "soft-label aggregation (era: entropy reduction, sa: simple average)",
        choices=AGGREGATIONS,
    )
    client_chunk: int | None = shared.client_chunk()


@dataclasses.dataclass(frozen=True)
class FDConfig(DPFields):
    clients_per_round: int | None = shared.clients_per_round()
    local_epochs: int = shared.local_epochs(1)
    batch_size: int = shared.batch_size()
    lr: float = shared.lr()
    fd_beta: float = setting(
        0.5,
        "weight beta of KL(softmax(global logits of y) || softmax(f(x))) in the local loss",
        check=">= 0",
    )
    client_chunk: int | None = shared.client_chunk()


@dataclasses.dataclass(frozen=True)
class FedDFConfig:
    clients_per_round: int | None = shared.clients_per_round()
    local_epochs: int = shared.local_epochs(1)
    batch_size: int = shared.batch_size()
    lr: float = shared.lr()
    server_distill_steps: int = setting(
        500, "the most server distillation steps per group and round (paper 10,000)", check=">= 0"
    )
    server_distill_lr: float = setting(
        1e-3, "server Adam lr, cosine-decayed over the steps", check="> 0"
    )
    distill_batch_size: int | None = shared.distill_batch_size()
    distill_temperature: float = setting(
        1.0, "temperature tau of the ensemble distillation KL", check="> 0"
    )
    distill_patience: int = setting(
        100,
        "stop distilling after this many steps without a lower validation KL (paper 1,000)",
        check=">= 1",
    )
    distill_check_every: int = setting(
        50, "measure the validation KL every N distillation steps", check=">= 1"
    )
    distill_val_fraction: float = setting(
        0.1, "fraction of the public set held out to validate distillation", check="(0, 1)"
    )
    client_chunk: int | None = shared.client_chunk()


@dataclasses.dataclass(frozen=True)
class FedMDConfig(DPFields):
    clients_per_round: int | None = shared.clients_per_round()
    local_epochs: int = shared.local_epochs(2)  # revisit epochs
    batch_size: int = shared.batch_size()
    fedmd_lr: float = setting(1e-3, "Adam lr of transfer learning, digest and revisit", check="> 0")
    public_per_round: int = shared.public_per_round(1000)
    fedmd_digest_epochs: int = setting(
        1, "epochs regressing the consensus on the round's public sample", check=">= 0"
    )
    fedmd_digest_batch: int = setting(256, "digest batch size", check=">= 1")
    fedmd_public_epochs: int = setting(
        1, "transfer learning at init, epochs on the labeled public set", check=">= 0"
    )
    fedmd_private_epochs: int = setting(
        1, "transfer learning at init, then epochs on private data", check=">= 0"
    )
    client_chunk: int | None = shared.client_chunk()


@dataclasses.dataclass(frozen=True)
class FCCLConfig:
    clients_per_round: int | None = shared.clients_per_round()
    local_epochs: int = shared.local_epochs(1)
    batch_size: int = shared.batch_size()
    public_per_round: int = shared.public_per_round(512)
    fccl_lr: float = setting(
        1e-3, "Adam lr of pretraining, the collaborative step and local training", check="> 0"
    )
    fccl_lambda: float = setting(
        0.0051, "weight of the off-diagonal cross-correlation terms", check=">= 0"
    )
    fccl_collab_steps: int = setting(
        1, "cross-correlation steps on the round's public batch", check=">= 0"
    )
    fccl_pretrain_epochs: int = setting(
        1,
        "epochs of private pretraining at init; the result is the frozen intra-domain teacher",
        check=">= 0",
    )
    client_chunk: int | None = shared.client_chunk()
