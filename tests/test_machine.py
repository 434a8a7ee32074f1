import platform

from e2etal.machine import cpu_name, describe_cpu


def test_cpu_name_reads_the_model_name(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\nprocessor\t: 1\n"
                    "model name\t: AMD EPYC 7B13\n")
    assert cpu_name(info) == "AMD EPYC 7B13"


def test_cpu_name_without_cpuinfo_falls_back_to_platform(tmp_path):
    assert cpu_name(tmp_path / "absent") == (platform.processor() or platform.machine() or "unknown CPU")


def test_describe_cpu_names_the_cores():
    assert describe_cpu().endswith(" cores") and platform.machine() in describe_cpu()
