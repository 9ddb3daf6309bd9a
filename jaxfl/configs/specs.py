"""One :class:`AlgorithmSpec` per algorithm: its name, its config class and what it can do, in
one place (no module constants read with ``getattr``). The command line, the builder and the
experiments axis read these; the algorithm's module (``jaxfl.algorithms.<name>``) holds its math.
Imports no JAX, so ``--help`` and ``--algo X --help`` are made from them in about a second."""

from __future__ import annotations

import dataclasses
import importlib

from jaxfl.configs import averaging, distillation, personalization


@dataclasses.dataclass(frozen=True)
class AlgorithmSpec:
    """What an algorithm is and declares.

    Attributes:
      name: the ``--algo`` name, also the module ``jaxfl.algorithms.<name>``.
      config: its config dataclass (every field a setting: :mod:`jaxfl.configs.fields`).
      paper: the paper it implements, for ``--help`` and the docs.
      family: ``averaging``, ``distillation``, ``personalization`` or ``asynchronous``.
      attacks: the adversarial behaviours (``--attack``) it simulates besides ``none``.
      dp: whether ``--dp-clip`` makes its uploads private (its config holds
        :class:`jaxfl.configs.shared.DPFields`).
      groups: whether clients may have different architectures (``--models``).
      unseen: whether it keeps the last ``--unseen-clients`` out of training.
      clock: whether it keeps the virtual clock (its config holds ``ClockFields``).
      participation: whether ``--participation poisson`` can draw its cohorts (its config
        holds ``ParticipationFields``): an algorithm without per-client state, whose round
        takes a cohort of varying size padded to a fixed capacity and masked.
      global_model: whether it has one global model (``test_acc``); without one a run watches
        ``client_acc_mean``.
      validation_fraction: its default ``--client-val-fraction`` (each client's validation
        split, held out of its training data).
      needs_local_baseline: whether ``make`` takes ``local_losses``, the local-only baseline's
        per-client losses (IncFL's gaps).
      static_hparams: float settings that fix an array shape or the program, so a sweep over
        them compiles one group per value (every other float is traced:
        :mod:`jaxfl.core.hparams`).
      host_data: whether its cohort is a function of the round's key alone
        (``FederatedAlgorithm.cohort``), so ``--data-placement host`` can gather the cohort's
        examples on the host before the round (:mod:`jaxfl.data.host_store`).
      public_data: whether it uses the unlabeled public set (distillation on shared data); on
        a natural federation the others get none by default, so no client's data is taken
        for it.
      sequences: whether it runs on the language tasks' next-token prediction (targets
        (N, T)): those whose clients train and are evaluated through
        :mod:`jaxfl.core.train`'s losses and accuracies, which take sequences. The
        distillation family (soft labels per class on a public set) and MOON (a contrastive
        loss on one representation per example) are not written for token positions and are
        refused there.
    """

    name: str
    config: type
    paper: str
    family: str = "averaging"
    attacks: tuple[str, ...] = ("label_flip",)
    dp: bool = False
    groups: bool = False
    unseen: bool = False
    clock: bool = False
    participation: bool = False
    global_model: bool = True
    validation_fraction: float = 0.0
    needs_local_baseline: bool = False
    static_hparams: tuple[str, ...] = ()
    public_data: bool = False
    host_data: bool = False
    sequences: bool = True

    def module(self):
        """The algorithm's module, ``jaxfl.algorithms.<name>`` (imports JAX)."""
        return importlib.import_module(f"jaxfl.algorithms.{self.name}")


MODEL_ATTACKS = ("label_flip", "scaled_update")
_PERSONAL = {"family": "personalization", "validation_fraction": 0.1}

# --algo, in --help's order
SPECS = {
    spec.name: spec
    for spec in (
        AlgorithmSpec(
            "fedavg",
            averaging.FedAvgConfig,
            "McMahan et al., AISTATS 2017; server optimizers Reddi et al., ICLR 2021",
            attacks=MODEL_ATTACKS,
            dp=True,
            unseen=True,
            host_data=True,
            clock=True,
            participation=True,
        ),
        AlgorithmSpec(
            "dsfl",
            distillation.DSFLConfig,
            "Itahara et al., IEEE TMC 2021 (DS-FL, entropy-reduction aggregation)",
            family="distillation",
            sequences=False,
            attacks=("label_flip", "random_logits", "scaled_logits"),
            dp=True,
            groups=True,
            public_data=True,
        ),
        AlgorithmSpec(
            "local",
            personalization.LocalConfig,
            "local-only training (the Motley baselines, Wu et al. 2022)",
            groups=True,
            global_model=False,
            **_PERSONAL,
        ),
        AlgorithmSpec(
            "finetune",
            personalization.FinetuneConfig,
            "FedAvg + local fine-tuning (Motley)",
            attacks=MODEL_ATTACKS,
            dp=True,
            clock=True,  # FedAvg's rounds: fine-tuning happens at evaluation
            unseen=True,
            participation=True,
            **_PERSONAL,
        ),
        AlgorithmSpec(
            "ditto", personalization.DittoConfig, "Li et al., ICML 2021", dp=True, **_PERSONAL
        ),
        AlgorithmSpec(
            "mrmtl", personalization.MRMTLConfig, "mean-regularized MTL (Motley)", **_PERSONAL
        ),
        AlgorithmSpec(
            "hypcluster",
            personalization.HypClusterConfig,
            "Mansour et al. 2020 (HypCluster)",
            global_model=False,
            static_hparams=("cluster_warmup",),
            **_PERSONAL,
        ),
        AlgorithmSpec(
            "perfedavg",
            personalization.PerFedAvgConfig,
            "Fallah et al., NeurIPS 2020",
            dp=True,
            **_PERSONAL,
        ),
        AlgorithmSpec(
            "incfl",
            averaging.IncFLConfig,
            "incentive-aware FL (MaxFL, Cho et al. 2023)",
            dp=True,
            unseen=True,
            validation_fraction=0.1,  # the gaps are measured on held-out data
            needs_local_baseline=True,
        ),
        AlgorithmSpec(
            "fd",
            distillation.FDConfig,
            "Jeong et al. 2018 (federated distillation)",
            family="distillation",
            sequences=False,
            dp=True,
            groups=True,
            global_model=False,
        ),
        AlgorithmSpec(
            "feddf",
            distillation.FedDFConfig,
            "Lin et al., NeurIPS 2020 (ensemble distillation)",
            family="distillation",
            sequences=False,
            groups=True,
            static_hparams=("distill_val_fraction",),
            public_data=True,
        ),
        AlgorithmSpec(
            "fedmd",
            distillation.FedMDConfig,
            "Li and Wang 2019",
            family="distillation",
            sequences=False,
            dp=True,
            groups=True,
            global_model=False,
            public_data=True,
        ),
        AlgorithmSpec(
            "fccl",
            distillation.FCCLConfig,
            "Huang et al., CVPR 2022",
            family="distillation",
            sequences=False,
            groups=True,
            global_model=False,
            public_data=True,
        ),
        AlgorithmSpec(
            "fedbuff",
            averaging.FedBuffConfig,
            "Nguyen et al., AISTATS 2022 (buffered asynchronous aggregation)",
            family="asynchronous",
            attacks=MODEL_ATTACKS,
            clock=True,
        ),
        AlgorithmSpec(
            "fedprox",
            averaging.FedProxConfig,
            "Li et al., MLSys 2020",
            attacks=MODEL_ATTACKS,
            dp=True,
            unseen=True,
            clock=True,
            participation=True,
            host_data=True,
        ),
        AlgorithmSpec(
            "scaffold",
            averaging.ScaffoldConfig,
            "Karimireddy et al., ICML 2020 (option II)",
            host_data=True,
        ),
        AlgorithmSpec(
            "fednova", averaging.FedNovaConfig, "Wang et al., NeurIPS 2020", host_data=True
        ),
        AlgorithmSpec("feddyn", averaging.FedDynConfig, "Acar et al., ICLR 2021", host_data=True),
        AlgorithmSpec(
            "moon",
            averaging.MoonConfig,
            "Li, He and Song, CVPR 2021",
            dp=True,
            host_data=True,
            sequences=False,
        ),
    )
}
ALGORITHMS = tuple(SPECS)


def with_capability(name: str) -> tuple[str, ...]:
    """The algorithms whose spec has ``name`` true (``"dp"``, ``"groups"``, ...), in order."""
    return tuple(n for n, spec in SPECS.items() if getattr(spec, name))


PERSONALIZATION = tuple(n for n, s in SPECS.items() if s.family == "personalization")
