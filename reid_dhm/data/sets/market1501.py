"""Market-1501 (Zheng et al., ICCV 2015): the paper's main re-ID benchmark."""

from ._published import published_reid_spec

SPECS = (
    published_reid_spec(
        "market1501",
        "Market-1501: 1,501 identities, 6 cameras (unpacked under the data root)",
        folder="market1501",
        inner="Market-1501-v15.09.15",
        origin="Market-1501 (Zheng et al., ICCV 2015), "
        "http://www.liangzheng.org/Project/project_reid.html",
    ),
)
