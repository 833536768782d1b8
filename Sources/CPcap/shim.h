// libpcap from Debian's libpcap-dev: tcpdump's filter language (pcap_compile, pcap_offline_filter).
#include <pcap/pcap.h>
