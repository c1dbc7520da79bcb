"""The re-ID task of the training loop, on torchreid's ``Engine`` base class.

The project extends torchreid: its ``ImageDataManager`` (data sets, transforms,
samplers) feeds training, and this task is a torchreid ``Engine`` (its loaders and
``parse_data_for_train`` / ``parse_data_for_eval``). The loop itself is the shared
:class:`~reid_dhm.engines.trainer.Trainer` (torchreid's ``Engine.run`` is not called:
the shared loop has the hooks, device-side loss sums and DDP support it lacks).

Evaluation ranks each target data set's query/gallery split with the one evaluator,
:class:`~reid_dhm.engines.reid_eval.ReidEvaluator` (exact Market-1501 protocol).
"""

from __future__ import annotations

from collections.abc import Sequence

from torchreid.reid.engine import Engine

from ..retrieval.result import ReidEvaluation
from ..utils.branches import MAIN
from ..utils.options import RANKS, check_run_ranks
from .reid_eval import ReidEvaluator


class ReidTask(Engine):
    """Train on a torchreid data manager; evaluate on its test splits.

    Args:
        datamanager: a torchreid ``ImageDataManager`` (``build_reid_datamanager``), its
            ``train_loader`` possibly replaced by ``reid_train_loader``.
        branches: the branches evaluated (``('main',)``, or every branch: paper Table 5).
        metric: ``'euclidean'`` or ``'cosine'``; rerank: k-reciprocal re-ranking.
        ranks: the Rank-k values reported.
        device: where features are ranked.
        progress: show extraction progress bars (a terminal, main process).
        preprocessing: a ``Preprocessing``, stored in checkpoints for the deployed model.
    """

    def __init__(
        self,
        datamanager,
        *,
        branches: Sequence[str] = (MAIN,),
        metric: str = "euclidean",
        rerank: bool = False,
        ranks: Sequence[int] = RANKS,
        device=None,
        progress: bool = False,
        preprocessing=None,
    ):
        check_run_ranks(ranks, "ranks")  # test_record reports Rank-1
        super().__init__(datamanager, use_gpu=False)  # devices are the model's, not torchreid's
        self.preprocessing = preprocessing
        self.evaluators = {
            name: ReidEvaluator(
                loaders["query"],
                loaders["gallery"],
                dataset=name,
                branches=tuple(branches),
                metric=metric,
                rerank=rerank,
                ranks=tuple(ranks),
                device=device,
                progress=progress,
            )  # fmt: skip
            for name, loaders in datamanager.test_loader.items()
        }
        self.evaluations: dict[str, ReidEvaluation] = {}

    def unpack(self, batch):
        """(images (B, 3, H, W), identity labels (B,)) through torchreid's parser."""
        return self.parse_data_for_train(batch)

    def evaluate(self, model) -> dict[str, ReidEvaluation] | None:
        """Every target data set's evaluation, by name (None off the main process)."""
        results = {name: evaluator(model) for name, evaluator in self.evaluators.items()}
        if any(r is None for r in results.values()):
            return None
        self.evaluations = results
        return results

    def test_record(self, result, epoch: int = 0) -> dict[str, float]:
        """``test/mAP`` and ``test/rank1`` (percent) of the main branch."""
        if not result:
            return {}
        main = next(iter(result.values())).main
        return {"test/mAP": 100 * main["mAP"], "test/rank1": 100 * main["rank1"]}

    def tables(self) -> dict[str, dict]:
        """``{data set: {branch: {mAP, mINP, rank<k>, num_valid_queries}}}``."""
        return {name: ev.table() for name, ev in self.evaluations.items()}

    def results(self, trainer=None) -> dict:
        return self.tables()

    def checkpoint_extras(self) -> dict:
        pre = self.preprocessing.to_dict() if self.preprocessing is not None else None
        return {"metrics": self.tables(), "preprocessing": pre}


__all__ = ["ReidTask"]
