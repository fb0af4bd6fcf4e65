"""Networks: MLPs, VAE nets, critics, potentials, classifiers, Bayesian layers."""

from lightning_wass.nn.gan_nets import DCGANCritic, DCGANGenerator, MLPCritic, MLPGenerator
from lightning_wass.nn.mlp import MLP
from lightning_wass.nn.bayesian import BayesConv2d, BayesianModule, BayesLinear, bayesian_parameter_groups, kl_divergence, shared_noise, use_posterior_mean
from lightning_wass.nn.classifiers import BayesianConvClassifier, BayesianMLPClassifier, ConvClassifier, Ensemble, MLPClassifier, WideResNet
from lightning_wass.nn.transport_map import ResidualTransportMap
from lightning_wass.nn.potentials import ConvDiscriminator, ConvPotential, ConvTrunk, MLPDiscriminator, OfficialConvDiscriminator, OfficialConvPotential, PotentialMLP, official_init_
from lightning_wass.nn.vae_nets import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, build_vae_nets

__all__ = ["DCGANCritic", "DCGANGenerator", "MLP", "MLPCritic", "MLPGenerator", "MLPEncoder", "MLPDecoder", "ConvEncoder", "ConvDecoder", "build_vae_nets", "ResidualTransportMap", "PotentialMLP", "MLPDiscriminator", "ConvTrunk", "ConvPotential", "ConvDiscriminator", "OfficialConvPotential", "OfficialConvDiscriminator", "official_init_"]
__all__ += ["BayesConv2d", "BayesianModule", "BayesLinear", "bayesian_parameter_groups", "kl_divergence", "shared_noise", "use_posterior_mean", "BayesianConvClassifier", "BayesianMLPClassifier", "ConvClassifier", "Ensemble", "MLPClassifier", "WideResNet"]
