"""DukeMTMC-reID (Zheng et al., ICCV 2017): the paper's second re-ID benchmark."""

from ._published import published_reid_spec

SPECS = (
    published_reid_spec(
        "dukemtmcreid",
        "DukeMTMC-reID: 1,404 identities, 8 cameras (unpacked under the data root)",
        folder="dukemtmc-reid",
        inner="DukeMTMC-reID",
        origin="DukeMTMC-reID (Zheng et al., ICCV 2017), "
        "https://github.com/layumi/DukeMTMC-reID_evaluation",
    ),
)
