"""The shared tester (testing_common.EquivariantCommonTester) on every tiny causal and seq2seq architecture.

By default a covering design runs: every architecture runs every check, each with one setting rotated across
architectures so that every value of every setting is covered on several of them, and gpt2, llama and t5
run the full cross product of the settings each check depends on. `pytest -m full_matrix` runs the rest of
the cross product on every architecture.
"""

import pytest
from testing_common import EquivariantCommonTester, case, matrix


class TestEquivariantCommon(EquivariantCommonTester):
    @pytest.mark.parametrize("architecture, setting", matrix("forward_equivariance"))
    def test_forward_equivariance(self, architecture, setting):
        self._test_forward_equivariance(case(architecture, setting))

    @pytest.mark.parametrize("architecture, setting", matrix("generation_equivariance"))
    def test_generation_equivariance(self, architecture, setting):
        self._test_generation_equivariance(case(architecture, setting))

    @pytest.mark.parametrize("architecture, setting", matrix("cache_equals_no_cache"))
    def test_cache_equals_no_cache(self, architecture, setting):
        self._test_cache_equals_no_cache(case(architecture, setting))

    @pytest.mark.parametrize("architecture, setting", matrix("batch_equals_single"))
    def test_batch_equals_single(self, architecture, setting):
        self._test_batch_equals_single(case(architecture, setting))

    @pytest.mark.parametrize("architecture, setting", matrix("save_load"))
    def test_save_load(self, architecture, setting, tmp_path):
        self._test_save_load(case(architecture, setting), tmp_path)

    @pytest.mark.parametrize("architecture, setting", matrix("dtype_cast"))
    def test_dtype_cast(self, architecture, setting):
        self._test_dtype_cast(case(architecture, setting))
