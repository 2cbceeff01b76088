"""The local loop: budget accounting, including what a strategy spends itself."""

from ranknas.evaluator.results import EvalResult, Objective, Status
from ranknas.execution.base import Budget, LocalExecutor
from ranknas.spaces import load_space
from ranknas.strategies.base import Proposal, Strategy


class Costly(Strategy):
    """Charges 1,000 examples of its own work to its first proposal."""

    name = ""

    def ask(self) -> Proposal:
        meta = {"cost_examples": 1000} if self._next_id == 0 else {}
        return self._proposal(self.space.sample(self.rng), meta=meta)

    def tell(self, proposal: Proposal, result: EvalResult) -> None:
        pass


def job(proposal: Proposal) -> EvalResult:
    return EvalResult(proposal.arch.arch_id, Status.OK, {"ne": 0.9}, examples=100)


def test_strategy_costs_count_against_the_examples_budget():
    strategy = Costly(load_space("dlrm"), [Objective.named("ne")], seed=0)
    seen = []
    budget = Budget(examples=1500)
    LocalExecutor().run(strategy, job, budget, lambda p, r: seen.append(p))
    # 1000 (strategy) + 100 per trial: the budget is spent after 5 trials, not 15.
    assert len(seen) == 5 and budget.used_examples == 1500


def test_trial_budget_stops_the_loop():
    strategy = Costly(load_space("dlrm"), [Objective.named("ne")], seed=0)
    budget = Budget(trials=3)
    LocalExecutor().run(strategy, job, budget, lambda p, r: None)
    assert budget.used_trials == 3
