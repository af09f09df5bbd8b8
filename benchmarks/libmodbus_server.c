/* A Modbus TCP server in C (libmodbus) for `python -m benchmarks.run --only libmodbus`: a device
 * that costs next to no CPU, so what the benchmark measures is the client.
 *
 * usage: libmodbus_server START COUNT
 * Holding registers START..START+COUNT-1 hold COUNT/2 float32 values (big-endian, word order
 * ABCD: high word first), value i = i + sin(t + i / 100) with t the seconds since start, updated
 * every UPDATE_MS. Listens on a free 127.0.0.1 port and prints {"port": N} once it does. Serves
 * any number of connections at once from one thread: select() over the listening socket and every
 * client (as libmodbus's tests/bandwidth-server-many-up.c). Runs until killed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <modbus.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

#define UPDATE_MS 10

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void update(uint16_t *regs, int floats, double t) {
    for (int i = 0; i < floats; i++) {
        float f = (float)(i + sin(t + i / 100.0));
        uint32_t u;
        memcpy(&u, &f, 4);
        regs[2 * i] = (uint16_t)(u >> 16);
        regs[2 * i + 1] = (uint16_t)(u & 0xFFFF);
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s START COUNT\n", argv[0]);
        return 2;
    }
    int start = atoi(argv[1]), count = atoi(argv[2]);
    modbus_t *ctx = modbus_new_tcp("127.0.0.1", 0);
    modbus_mapping_t *map = modbus_mapping_new_start_address(0, 0, 0, 0, start, count, 0, 0);
    int server = ctx && map ? modbus_tcp_listen(ctx, 64) : -1;
    if (server < 0) {
        fprintf(stderr, "cannot listen: %s\n", modbus_strerror(errno));
        return 1;
    }
    struct sockaddr_in addr;
    socklen_t len = sizeof addr;
    getsockname(server, (struct sockaddr *)&addr, &len);
    printf("{\"port\": %d}\n", ntohs(addr.sin_port));
    fflush(stdout);

    uint8_t query[MODBUS_TCP_MAX_ADU_LENGTH];
    fd_set all, ready;
    FD_ZERO(&all);
    FD_SET(server, &all);
    int maxfd = server, one = 1;
    double t0 = now_s(), next = t0;
    for (;;) {
        double t = now_s();
        if (t >= next) {
            update(map->tab_registers, count / 2, t - t0);
            next = t + UPDATE_MS / 1000.0;
        }
        struct timeval wait = {0, (suseconds_t)((next - t) * 1e6)};
        ready = all;
        if (select(maxfd + 1, &ready, NULL, NULL, &wait) < 0)
            continue;
        for (int fd = 0; fd <= maxfd; fd++) {
            if (!FD_ISSET(fd, &ready))
                continue;
            if (fd == server) {
                int client = accept(server, NULL, NULL);
                if (client >= 0 && client < FD_SETSIZE) {
                    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    FD_SET(client, &all);
                    maxfd = client > maxfd ? client : maxfd;
                } else if (client >= 0) {
                    close(client);
                }
                continue;
            }
            modbus_set_socket(ctx, fd);
            int rc = modbus_receive(ctx, query);
            if (rc > 0) {
                modbus_reply(ctx, query, rc, map);
            } else if (rc == -1) { /* the client went away (or sent garbage) */
                close(fd);
                FD_CLR(fd, &all);
            }
        }
    }
}
