// dmar-probe: the HIL harness's own end-to-end probe of the guest's VFIO + VT-d path.
//
// Opens an NVMe controller bound to vfio-pci through the type1 IOMMU, sets up an admin queue
// pair in DMA-mapped memory and issues IDENTIFY CONTROLLER (NVMe 1.4 §5.15.2.1) with its data
// buffer at:
//   ok     a mapped IOVA: the command must complete and the data carry the controller's serial;
//   fault  an IOVA that is not mapped: the emulated IOMMU must block the write and the guest
//          kernel log a "DMAR: [DMA Write ...] fault" line (QEMU's NVMe model still posts a
//          success completion, which is why the harness reads the kernel log).
// It exists to prove the harness (the vfio-bound device really goes through the IOMMU under
// iommu=pt; `hil.sh run --expect-dmar` catches a fault; a clean run stays clean). Built static
// by selftest.sh. Usage: dmar-probe ok|fault BDF [SERIAL]. Exit 0 when the mode's expectation
// holds on the device side, 1 otherwise, 2 on a setup error.
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define IOVA_BASE 0x40000000ull   // our three pages: SQ, CQ, data (unlike their user addresses)
#define IOVA_UNMAPPED 0xdead0000ull
#define REG_CAP 0x00
#define REG_CC 0x14
#define REG_CSTS 0x1c
#define REG_AQA 0x24
#define REG_ASQ 0x28
#define REG_ACQ 0x30

static int dev_fd;
static uint64_t bar0_off, cfg_off;

static void die(const char *what) {
	fprintf(stderr, "dmar-probe: %s: %s\n", what, strerror(errno));
	exit(2);
}

static uint32_t rd32(uint64_t reg) {
	uint32_t v;
	if (pread(dev_fd, &v, 4, (off_t)(bar0_off + reg)) != 4) die("BAR0 read");
	return v;
}

static void wr32(uint64_t reg, uint32_t v) {
	if (pwrite(dev_fd, &v, 4, (off_t)(bar0_off + reg)) != 4) die("BAR0 write");
}

static void wr64(uint64_t reg, uint64_t v) {
	wr32(reg, (uint32_t)v);
	wr32(reg + 4, (uint32_t)(v >> 32));
}

static double now(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

// Waits (bounded by CAP.TO, at least 2 s) for CSTS.RDY to equal `want`.
static int wait_ready(uint32_t want, double limit) {
	double end = now() + limit;
	while (((rd32(REG_CSTS) & 1u) != want)) {
		if (now() > end) return -1;
		usleep(1000);
	}
	return 0;
}

int main(int argc, char **argv) {
	if (argc < 3 || (strcmp(argv[1], "ok") && strcmp(argv[1], "fault"))) {
		fprintf(stderr, "usage: dmar-probe ok|fault BDF [SERIAL]\n");
		return 2;
	}
	int fault = !strcmp(argv[1], "fault");
	const char *bdf = argv[2];
	const char *serial = argc > 3 ? argv[3] : "SCSTACCEL1";

	char path[512], link[256];
	snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/iommu_group", bdf);
	ssize_t n = readlink(path, link, sizeof link - 1);
	if (n < 0) die(path);
	link[n] = 0;
	const char *group_no = strrchr(link, '/') ? strrchr(link, '/') + 1 : link;

	int container = open("/dev/vfio/vfio", O_RDWR);
	if (container < 0) die("open /dev/vfio/vfio");
	if (ioctl(container, VFIO_GET_API_VERSION) != VFIO_API_VERSION) die("VFIO API version");
	if (ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) != 1) die("no TYPE1v2");
	snprintf(path, sizeof path, "/dev/vfio/%s", group_no);
	int group = open(path, O_RDWR);
	if (group < 0) die(path);
	struct vfio_group_status gs = {.argsz = sizeof gs};
	if (ioctl(group, VFIO_GROUP_GET_STATUS, &gs)) die("GROUP_GET_STATUS");
	if (!(gs.flags & VFIO_GROUP_FLAGS_VIABLE)) {
		errno = EBUSY;
		die("group not viable");
	}
	if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container)) die("GROUP_SET_CONTAINER");
	if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) die("SET_IOMMU");
	dev_fd = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, bdf);
	if (dev_fd < 0) die("GROUP_GET_DEVICE_FD");

	struct vfio_region_info ri = {.argsz = sizeof ri, .index = VFIO_PCI_CONFIG_REGION_INDEX};
	if (ioctl(dev_fd, VFIO_DEVICE_GET_REGION_INFO, &ri)) die("config region info");
	cfg_off = ri.offset;
	ri = (struct vfio_region_info){.argsz = sizeof ri, .index = VFIO_PCI_BAR0_REGION_INDEX};
	if (ioctl(dev_fd, VFIO_DEVICE_GET_REGION_INFO, &ri)) die("BAR0 region info");
	bar0_off = ri.offset;

	// PCI command: memory space + bus master, so the function may DMA.
	uint16_t cmd;
	if (pread(dev_fd, &cmd, 2, (off_t)(cfg_off + 4)) != 2) die("config read");
	cmd |= 0x6;
	if (pwrite(dev_fd, &cmd, 2, (off_t)(cfg_off + 4)) != 2) die("config write");

	// Three pages at IOVA_BASE: admin SQ, admin CQ, identify data.
	uint8_t *mem = mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED) die("mmap");
	memset(mem, 0, 3 * PAGE);
	struct vfio_iommu_type1_dma_map map = {
		.argsz = sizeof map,
		.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
		.vaddr = (uintptr_t)mem,
		.iova = IOVA_BASE,
		.size = 3 * PAGE,
	};
	if (ioctl(container, VFIO_IOMMU_MAP_DMA, &map)) die("IOMMU_MAP_DMA");

	uint32_t cap_lo = rd32(REG_CAP), cap_hi = rd32(REG_CAP + 4);
	double to = ((cap_lo >> 24) & 0xff) * 0.5 + 2.0; // CAP.TO in 500 ms units
	uint32_t dstrd = cap_hi & 0xf;
	wr32(REG_CC, 0);
	if (wait_ready(0, to)) die("controller did not become not-ready");
	wr32(REG_AQA, (1u << 16) | 1u); // 2-entry queues, zero-based
	wr64(REG_ASQ, IOVA_BASE);
	wr64(REG_ACQ, IOVA_BASE + PAGE);
	wr32(REG_CC, (4u << 20) | (6u << 16) | 1u); // IOCQES 16 B, IOSQES 64 B, EN
	if (wait_ready(1, to)) die("controller did not become ready");

	// IDENTIFY CONTROLLER, CID 0x2a.
	volatile uint32_t *sqe = (volatile uint32_t *)mem;
	sqe[0] = 0x06u | (0x2au << 16);
	uint64_t prp1 = fault ? IOVA_UNMAPPED : IOVA_BASE + 2 * PAGE;
	sqe[6] = (uint32_t)prp1;
	sqe[7] = (uint32_t)(prp1 >> 32);
	sqe[10] = 1; // CNS 01h: controller
	__sync_synchronize();
	wr32(0x1000, 1); // SQ0 tail doorbell

	volatile uint32_t *cqe = (volatile uint32_t *)(mem + PAGE);
	double end = now() + 5.0;
	while (!(cqe[3] & (1u << 16))) {
		if (now() > end) break;
		usleep(1000);
	}
	uint32_t dw3 = cqe[3];
	uint32_t csts = rd32(REG_CSTS);
	wr32(0x1000 + (4u << dstrd), 1); // CQ0 head doorbell
	wr32(REG_CC, 0);
	(void)wait_ready(0, to);

	int completed = (dw3 >> 16) & 1;
	unsigned status = (dw3 >> 17) & 0x7fff;
	char sn[21] = {0};
	memcpy(sn, mem + 2 * PAGE + 4, 20); // Identify Controller bytes 23:04: SN
	printf("dmar-probe %s: completed=%d cid=0x%x status=0x%x csts=0x%x sn='%s'\n", argv[1], completed,
	       dw3 & 0xffff, status, csts, sn);
	if (!completed) return 1;
	if (fault) return sn[0] == 0 ? 0 : 1; // the data never reached our memory
	return (status == 0 && !strncmp(sn, serial, strlen(serial))) ? 0 : 1;
}
