"""FactorLLM: split each dense gated FFN into experts, fit a router per layer, export a stock MoE."""
from compress.factorize.apply import FactorizeResult, check_factorize, factorize_model, factorized_mlps
from compress.factorize.config import FactorizeConfig
from compress.factorize.moe import FactorizedMLP, route

__all__ = ["FactorizeConfig", "FactorizeResult", "FactorizedMLP", "check_factorize", "factorize_model",
           "factorized_mlps", "route"]
