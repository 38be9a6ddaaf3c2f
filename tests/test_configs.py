"""Experiment configs: family defaults, strict and typed config arguments."""

import pytest

from experiments.configs import options
from experiments.configs import prune as prune_configs
from experiments.configs import search as search_configs
from experiments.configs import train as train_configs

ALL = [prune_configs, search_configs, train_configs]


@pytest.mark.parametrize('configs', [prune_configs, search_configs])
def test_units_default_to_the_family_and_the_rest_to_the_reference(configs):
  config = configs.get_config('model=vit_digits')
  assert config.model == 'vit_digits'
  assert config.units == ''  # the family's default unit type
  assert config.absolute_tokens is True  # |R| per token, as the reference
  assert config.random_seeds == 20 and config.other_classes == 'excluded'
  with pytest.raises(TypeError):
    config.absolute_tokens = 'yes'


@pytest.mark.parametrize('configs', ALL)
def test_unknown_config_argument_is_an_error_naming_it(configs):
  with pytest.raises(ValueError, match="unknown config option 'modle'"):
    configs.get_config('modle=resnet_digits')
  with pytest.raises(ValueError, match='runlocal'):  # the valid ones listed
    configs.get_config('model=resnet_digits,run_local')


@pytest.mark.parametrize('configs', ALL)
def test_typed_config_arguments_are_checked(configs):
  with pytest.raises(ValueError, match='runlocal is a flag'):
    configs.get_config('model=resnet_digits,runlocal=maybe')
  assert configs.get_config('model=resnet_digits,runlocal=false') == (
      configs.get_config('model=resnet_digits'))
  local = configs.get_config('model=resnet_digits,runlocal')
  assert local != configs.get_config('model=resnet_digits')


def test_parse_converts_values_to_the_type_of_their_default():
  parsed = options.parse('n=3,rate=0.5,name=x,flag', n=1, rate=0.1, name='',
                         flag=False)
  assert (parsed.n, parsed.rate, parsed.name, parsed.flag) == (3, 0.5, 'x',
                                                              True)
  assert isinstance(parsed.n, int) and isinstance(parsed.rate, float)
  with pytest.raises(ValueError, match="n takes a int, got 'three'"):
    options.parse('n=three', n=1)
  with pytest.raises(ValueError, match="unknown config option 'm'.*n"):
    options.parse('m=3', n=1)
