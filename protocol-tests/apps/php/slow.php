<?php
sleep(isset($_GET['secs']) ? (int) $_GET['secs'] : 2);
echo "slow done\n";
